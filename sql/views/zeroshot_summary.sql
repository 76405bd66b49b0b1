-- zeroshot_summary: per run, label set, template and augmentation (and severity where it has
-- levels; the stored variant label is NAME@SEVERITY there, as in shifts), over the
-- images classified zero-shot (the `zeroshot` table, written by `clipshift zeroshot`):
-- flip_rate, the share of images whose top-1 label changes; top1_prob_drop, the mean drop of
-- the probability of the original's top-1 label (original's minus variant's); and
-- top5_retention, the share whose original top-1 label stays in the variant's top 5.
-- Definitions and the probability used: docs/metrics.md.
CREATE OR REPLACE VIEW zeroshot_summary AS
WITH original AS (
    SELECT run_id, label_set, template, image_id,
           top_labels[1] AS label, top_probs[1] AS prob
    FROM zeroshot
    WHERE variant = 'original'
)
SELECT
    z.run_id,
    z.label_set,
    z.template,
    perturbation_name(z.variant, z.severity) AS augmentation,
    z.severity,
    count(*) AS n,
    avg(CASE WHEN z.top_labels[1] <> o.label THEN 1.0 ELSE 0.0 END) AS flip_rate,
    avg(o.prob - z.original_top1_prob) AS top1_prob_drop,
    avg(CASE WHEN list_contains(z.top_labels, o.label) THEN 1.0 ELSE 0.0 END) AS top5_retention
FROM zeroshot AS z
JOIN original AS o USING (run_id, label_set, template, image_id)
WHERE z.variant <> 'original'
GROUP BY z.run_id, z.label_set, z.template, z.variant, z.severity;
