-- How far apart do two augmentations put the same image? The mean over images of the cosine
-- distance between their augmented embeddings, for every ordered pair (zero diagonal).
SELECT augmentation_a, augmentation_b, distance
FROM pairwise
WHERE run_id = $run_id
ORDER BY augmentation_a, augmentation_b;
