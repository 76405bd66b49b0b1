-- pairwise: per run, the mean over images of the cosine distance 1 - cos between the
-- embeddings of two augmentations of the same image (the dendrogram's input); zero diagonal.
-- Embeddings are cast to DOUBLE first, as in shifts.sql (float32 cosines put the distances
-- ~1e-7 off numpy's, enough to move a merge height in its fifth significant digit).
CREATE OR REPLACE VIEW pairwise AS
WITH augmented AS (
    SELECT run_id, image_id, variant, embedding::DOUBLE[] AS embedding
    FROM variants WHERE variant <> 'original'
),
upper AS (
    SELECT a.run_id, a.variant AS augmentation_a, b.variant AS augmentation_b,
           avg(1 - list_cosine_similarity(a.embedding, b.embedding)) AS distance,
           count(*) AS n
    FROM augmented AS a
    JOIN augmented AS b ON a.run_id = b.run_id AND a.image_id = b.image_id AND a.variant < b.variant
    GROUP BY ALL
),
names AS (SELECT DISTINCT run_id, variant AS augmentation FROM augmented)
SELECT run_id, augmentation_a, augmentation_b, distance, n FROM upper
UNION ALL
SELECT run_id, augmentation_b, augmentation_a, distance, n FROM upper
UNION ALL
SELECT run_id, augmentation, augmentation, 0.0, NULL FROM names;
