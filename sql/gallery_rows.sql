-- What does the gallery of `clipshift serve` rank, for one run? One row per (image, variant) of
-- `shifts` with the image's file, its six metrics, the original's and the variant's zero-shot
-- top-1 labels and whether they differ (a flip; NULL where either is not stored). The
-- zero-shot columns come from one stored (label_set, template) per run: ImageNet first.
-- The server keeps this table in memory per store version and pages it with sql/gallery.sql:
-- computed over `shifts` for every page it took 1.1 s at the paper's size, from memory ~20 ms.
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
)
SELECT s.image_id, i.path, s.augmentation, s.severity, s.variant,
       s.cosine, s.l2, s.attention_similarity, s.patch_similarity,
       s.edge_preservation, s.detail_preservation,
       o.label AS label, a.label AS variant_label,
       CASE WHEN o.top1 IS NULL OR a.top1 IS NULL THEN NULL ELSE o.top1 <> a.top1 END
           AS flipped
FROM shifts AS s
LEFT JOIN images AS i USING (image_id)
LEFT JOIN predicted AS o ON o.image_id = s.image_id AND o.variant = 'original'
LEFT JOIN predicted AS a ON a.image_id = s.image_id AND a.variant = s.variant
WHERE s.run_id = $run_id;
