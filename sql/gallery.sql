-- Which images of one run moved most under a perturbation? One page of the run's `gallery_rows`
-- (sql/gallery_rows.sql: one row per (image, variant) of `shifts`, kept in memory by
-- `clipshift serve` per store version), ranked by the chosen metric ($metric: a column of
-- shifts; $descending: highest first), with the gallery's filters (each NULL: not filtered):
-- the augmentation and severity, a range of the metric, a file-name substring, a zero-shot
-- flip (the variant's top-1 label differs from the original's) and the original's top-1
-- label. `total` counts every row the filters keep, for paging.
WITH ranked AS (
    SELECT *,
           CASE $metric
               WHEN 'cosine' THEN cosine WHEN 'l2' THEN l2
               WHEN 'attention_similarity' THEN attention_similarity
               WHEN 'patch_similarity' THEN patch_similarity
               WHEN 'edge_preservation' THEN edge_preservation
               WHEN 'detail_preservation' THEN detail_preservation
           END AS value
    FROM gallery_rows
    WHERE ($augmentation::VARCHAR IS NULL OR augmentation = $augmentation)
      AND ($severity::INTEGER IS NULL OR severity = $severity)
      AND ($file_name::VARCHAR IS NULL OR contains(lower(path), lower($file_name)))
)
SELECT *, count(*) OVER () AS total
FROM ranked
WHERE ($low::DOUBLE IS NULL OR value >= $low)
  AND ($high::DOUBLE IS NULL OR value <= $high)
  AND ($flipped::BOOLEAN IS NULL OR flipped = $flipped)
  AND ($label::VARCHAR IS NULL OR label = $label)
ORDER BY CASE WHEN $descending THEN -value ELSE value END NULLS LAST, image_id, variant
LIMIT $limit OFFSET $offset;
