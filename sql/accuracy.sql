-- How often does a run's model name an image's true class, per augmentation and severity?
-- For run $run_id classified against $label_set and $template, over its labelled images: n,
-- top1, top5 and error (the zeroshot_accuracy view), the originals first; reference_error is
-- the error of run $reference (NULL for none) on the same augmentation and severity.
SELECT a.augmentation, a.severity, a.n, a.top1, a.top5, a.error, b.error AS reference_error
FROM zeroshot_accuracy AS a
LEFT JOIN zeroshot_accuracy AS b
  ON b.run_id = $reference AND b.label_set = a.label_set AND b.template = a.template
 AND b.augmentation = a.augmentation AND b.severity IS NOT DISTINCT FROM a.severity
WHERE a.run_id = $run_id AND a.label_set = $label_set AND a.template = $template
ORDER BY a.augmentation = 'original' DESC, a.augmentation, a.severity NULLS FIRST;
