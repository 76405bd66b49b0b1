-- Against which label sets and templates are run $run_id's labelled images classified? Each
-- stored (label set, template) with predictions of images whose label the set holds (the
-- zeroshot_accuracy view), $label_set with $template first, then by name.
SELECT label_set, template
FROM zeroshot_accuracy
WHERE run_id = $run_id
GROUP BY label_set, template
ORDER BY label_set = $label_set AND template = $template DESC, label_set, template;
