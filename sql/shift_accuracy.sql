-- Does an image whose embedding moves further lose its true class more often? For run
-- $run_id classified against $label_set and $template: one row per augmented variant of each
-- labelled image whose original is classified right (top-1), with the cosine between the
-- variant's and the original's embeddings (shifts) and lost, whether the variant's top-1 is no
-- longer the true class (1) or still is (0).
SELECT s.augmentation, s.severity, s.image_id, s.cosine,
       CASE WHEN c.correct_top1 THEN 0 ELSE 1 END AS lost
FROM shifts AS s
JOIN zeroshot_correct AS c USING (run_id, image_id, variant)
JOIN zeroshot_correct AS o
  ON o.run_id = c.run_id AND o.label_set = c.label_set AND o.template = c.template
 AND o.image_id = c.image_id AND o.variant = 'original'
WHERE s.run_id = $run_id AND c.label_set = $label_set AND c.template = $template
  AND o.correct_top1
ORDER BY s.augmentation, s.severity NULLS FIRST, s.image_id;
