-- Does an augmentation change what the model sees? Per augmentation (and severity), for one
-- run classified against one label set and template: flip_rate, top1_prob_drop and
-- top5_retention (the zeroshot_summary view; definitions in docs/metrics.md).
SELECT augmentation, severity, n, flip_rate, top1_prob_drop, top5_retention
FROM zeroshot_summary
WHERE run_id = $run_id AND label_set = $label_set AND template = $template
ORDER BY augmentation, severity NULLS FIRST;
