-- pairwise: per run, the mean over images of the cosine distance 1 - cos between the
-- embeddings of two augmentations of the same image (the dendrogram's input); zero diagonal.
-- Embeddings are cast to DOUBLE first, as in shifts.sql (float32 cosines put the distances
-- ~1e-7 off numpy's, enough to move a merge height in its fifth significant digit). Each
-- side reads `variants` itself (no shared CTE) so that a run_id filter reaches the scans.
CREATE OR REPLACE MACRO augmented_embeddings() AS TABLE
SELECT run_id, image_id, variant, embedding::DOUBLE[] AS embedding
FROM variants WHERE variant <> 'original';

CREATE OR REPLACE VIEW pairwise AS
WITH upper AS (
    SELECT a.run_id, a.variant AS augmentation_a, b.variant AS augmentation_b,
           avg(1 - list_cosine_similarity(a.embedding, b.embedding)) AS distance,
           count(*) AS n
    FROM augmented_embeddings() AS a
    JOIN augmented_embeddings() AS b
      ON a.run_id = b.run_id AND a.image_id = b.image_id AND a.variant < b.variant
    GROUP BY ALL
)
SELECT run_id, augmentation_a, augmentation_b, distance, n FROM upper
UNION ALL
SELECT run_id, augmentation_b, augmentation_a, distance, n FROM upper
UNION ALL
SELECT DISTINCT run_id, variant, variant, 0.0, NULL FROM variants WHERE variant <> 'original';
