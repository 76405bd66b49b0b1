-- How often does each augmentation flip the top-1 label of each model in the store? The
-- flip_rate of every run classified with the same label set and template as run $run_id
-- (its $label_set and $template where it has them, else its first stored pair), severities
-- pooled (weighted by their images).
WITH chosen AS (
    SELECT label_set, template
    FROM zeroshot_summary
    WHERE run_id = $run_id
    GROUP BY label_set, template
    ORDER BY label_set = $label_set AND template = $template DESC, label_set, template
    LIMIT 1
)
SELECT s.run_id, r.model, s.label_set, s.template, s.augmentation,
       sum(s.flip_rate * s.n) / sum(s.n) AS flip_rate, sum(s.n) AS n
FROM zeroshot_summary AS s
JOIN chosen USING (label_set, template)
JOIN runs AS r USING (run_id)
GROUP BY s.run_id, r.model, s.label_set, s.template, s.augmentation
ORDER BY s.run_id = $run_id DESC, r.model, s.run_id, s.augmentation;
