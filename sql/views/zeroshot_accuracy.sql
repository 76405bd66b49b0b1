-- zeroshot_correct: is a zero-shot prediction right? One row per prediction (the `zeroshot`
-- table) of an image whose label (images.label, migration 0007) its label set holds:
-- correct_top1, the true class is the top-1; correct_top5, it is among the top 5. A class
-- name the set lists twice (ImageNet's "missile" and "sunglasses") is right at either index.
CREATE OR REPLACE VIEW zeroshot_correct AS
WITH truth AS (
    SELECT label_set, label, list(DISTINCT label_index) AS indices
    FROM zeroshot_labels
    GROUP BY label_set, label
)
SELECT
    z.run_id,
    z.label_set,
    z.template,
    z.image_id,
    perturbation_name(z.variant, z.severity) AS augmentation,
    z.severity,
    z.variant,
    i.label,
    list_contains(t.indices, z.top_labels[1]) AS correct_top1,
    list_has_any(t.indices, z.top_labels) AS correct_top5
FROM zeroshot AS z
JOIN images AS i USING (image_id)
JOIN truth AS t ON t.label_set = z.label_set AND t.label = i.label;

-- zeroshot_accuracy: per run, label set, template, augmentation and severity (the originals
-- as augmentation 'original'), over the labelled images: n, top1 and top5 (the shares of
-- images whose true class is the top-1, among the top 5) and error = 1 - top1.
CREATE OR REPLACE VIEW zeroshot_accuracy AS
SELECT
    run_id,
    label_set,
    template,
    augmentation,
    severity,
    count(*) AS n,
    avg(CASE WHEN correct_top1 THEN 1.0 ELSE 0.0 END) AS top1,
    avg(CASE WHEN correct_top5 THEN 1.0 ELSE 0.0 END) AS top5,
    1.0 - avg(CASE WHEN correct_top1 THEN 1.0 ELSE 0.0 END) AS error
FROM zeroshot_correct
GROUP BY run_id, label_set, template, augmentation, severity;
