-- Which images of one run moved most under a perturbation? One row per (image, variant) of
-- `shifts`, ranked by the chosen metric ($metric: a column of shifts; $descending: highest
-- first), with the filters of `clipshift serve`'s gallery (each NULL: not filtered): the
-- augmentation and severity, a range of the metric, a file-name substring, a zero-shot flip
-- (the variant's top-1 label differs from the original's) and the original's top-1 label.
-- The zero-shot columns come from one stored (label_set, template) per run: ImageNet first.
-- `total` counts every row the filters keep, for paging. $variant (NULL: any), the stored
-- label where the augmentation and severity name exactly one, reaches the scans of `variants`
-- (a filter on the computed augmentation does not): 49 against 162 ms for a page of 1,000
-- images x 10 variants.
WITH chosen AS (
    SELECT label_set, template FROM zeroshot WHERE run_id = $run_id
    ORDER BY label_set <> 'imagenet', label_set, template LIMIT 1
),
predicted AS (
    SELECT z.image_id, z.variant, z.top_labels[1] AS top1, l.label
    FROM zeroshot AS z
    JOIN chosen USING (label_set, template)
    LEFT JOIN zeroshot_labels AS l
      ON l.label_set = z.label_set AND l.label_index = z.top_labels[1]
    WHERE z.run_id = $run_id
),
ranked AS (
    SELECT s.image_id, i.path, s.augmentation, s.severity, s.variant,
           s.cosine, s.l2, s.attention_similarity, s.patch_similarity,
           s.edge_preservation, s.detail_preservation,
           o.label AS label, a.label AS variant_label,
           CASE WHEN o.top1 IS NULL OR a.top1 IS NULL THEN NULL ELSE o.top1 <> a.top1 END
               AS flipped,
           CASE $metric
               WHEN 'cosine' THEN s.cosine WHEN 'l2' THEN s.l2
               WHEN 'attention_similarity' THEN s.attention_similarity
               WHEN 'patch_similarity' THEN s.patch_similarity
               WHEN 'edge_preservation' THEN s.edge_preservation
               WHEN 'detail_preservation' THEN s.detail_preservation
           END AS value
    FROM shifts AS s
    LEFT JOIN images AS i USING (image_id)
    LEFT JOIN predicted AS o ON o.image_id = s.image_id AND o.variant = 'original'
    LEFT JOIN predicted AS a ON a.image_id = s.image_id AND a.variant = s.variant
    WHERE s.run_id = $run_id
      AND ($variant::VARCHAR IS NULL OR s.variant = $variant)
      AND ($augmentation::VARCHAR IS NULL OR s.augmentation = $augmentation)
      AND ($severity::INTEGER IS NULL OR s.severity = $severity)
      AND ($file_name::VARCHAR IS NULL OR contains(lower(i.path), lower($file_name)))
)
SELECT * EXCLUDE (value), value, count(*) OVER () AS total
FROM ranked
WHERE ($low::DOUBLE IS NULL OR value >= $low)
  AND ($high::DOUBLE IS NULL OR value <= $high)
  AND ($flipped::BOOLEAN IS NULL OR flipped = $flipped)
  AND ($label::VARCHAR IS NULL OR label = $label)
ORDER BY CASE WHEN $descending THEN -value ELSE value END NULLS LAST, image_id, variant
LIMIT $limit OFFSET $offset;
