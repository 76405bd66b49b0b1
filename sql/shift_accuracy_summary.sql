-- Does an augmentation that moves embeddings further cost more accuracy? For run $run_id
-- classified against $label_set and $template, per augmentation and severity: the mean
-- cosine of the labelled images' variants to their originals (shifts), the top-1 accuracy
-- drop (the originals' top1 minus the variants'), and, per augmentation (severities pooled),
-- the point-biserial correlation between an image's cosine and whether it lost its true
-- class (sql/shift_accuracy.sql's rows; NULL where none or all lost it).
WITH per_image AS (
    SELECT s.augmentation, s.severity, s.cosine,
           CASE WHEN c.correct_top1 THEN 0.0 ELSE 1.0 END AS lost, o.correct_top1 AS kept
    FROM shifts AS s
    JOIN zeroshot_correct AS c USING (run_id, image_id, variant)
    JOIN zeroshot_correct AS o
      ON o.run_id = c.run_id AND o.label_set = c.label_set AND o.template = c.template
     AND o.image_id = c.image_id AND o.variant = 'original'
    WHERE s.run_id = $run_id AND c.label_set = $label_set AND c.template = $template
),
clean AS (
    SELECT top1 FROM zeroshot_accuracy
    WHERE run_id = $run_id AND label_set = $label_set AND template = $template
      AND augmentation = 'original'
),
biserial AS (
    SELECT augmentation, corr(cosine, lost) FILTER (WHERE kept) AS point_biserial
    FROM per_image
    GROUP BY augmentation
)
SELECT p.augmentation, p.severity, count(*) AS n, avg(p.cosine) AS mean_cosine,
       (SELECT top1 FROM clean) - a.top1 AS top1_drop, b.point_biserial
FROM per_image AS p
JOIN zeroshot_accuracy AS a
  ON a.run_id = $run_id AND a.label_set = $label_set AND a.template = $template
 AND a.augmentation = p.augmentation AND a.severity IS NOT DISTINCT FROM p.severity
JOIN biserial AS b ON b.augmentation = p.augmentation
GROUP BY p.augmentation, p.severity, a.top1, b.point_biserial
ORDER BY p.augmentation, p.severity NULLS FIRST;
