-- What are the cosine and l2 of every (image, augmentation) of one run? The raw values behind
-- the l2 KDE and the cosine histogram (one row per image and augmentation).
SELECT image_id, augmentation, severity, cosine, l2
FROM shifts
WHERE run_id = $run_id;
