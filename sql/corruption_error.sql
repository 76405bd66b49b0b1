-- How much worse than a $reference run does run $run_id classify under each corruption?
-- ImageNet-C's corruption error (Hendrycks and Dietterich, 2019), per augmentation with
-- severity levels, over the severities both runs hold (classified against $label_set and
-- $template, labelled images only): error = the mean over severities of E(s,c);
-- ce = sum_s E(s,c) / sum_s E_ref(s,c); relative_ce = sum_s (E(s,c) - E_clean) /
-- sum_s (E_ref(s,c) - E_ref_clean), E_clean the error on the originals. A last row
-- 'mean': the mean error, mCE and relative mCE (the means over the corruptions).
-- Without a reference run, ce and relative_ce are NULL.
WITH cells AS (
    SELECT run_id, augmentation, severity, error
    FROM zeroshot_accuracy
    WHERE (run_id = $run_id OR run_id = $reference)
      AND label_set = $label_set AND template = $template
),
clean AS (
    SELECT run_id, error FROM cells WHERE augmentation = 'original'
),
paired AS (
    SELECT a.augmentation, a.severity, a.error, b.error AS reference_error,
           a.error - (SELECT error FROM clean WHERE run_id = $run_id) AS excess,
           b.error - (SELECT error FROM clean WHERE run_id = $reference) AS reference_excess
    FROM cells AS a
    LEFT JOIN cells AS b
      ON b.run_id = $reference AND b.augmentation = a.augmentation AND b.severity = a.severity
    WHERE a.run_id = $run_id AND a.severity IS NOT NULL
),
per_corruption AS (
    SELECT augmentation,
           count(*) AS severities,
           avg(error) AS error,
           sum(error) FILTER (WHERE reference_error IS NOT NULL)
               / nullif(sum(reference_error), 0) AS ce,
           sum(excess) FILTER (WHERE reference_excess IS NOT NULL)
               / nullif(sum(reference_excess), 0) AS relative_ce
    FROM paired
    GROUP BY augmentation
)
SELECT augmentation, severities, error, ce, relative_ce
FROM (
    SELECT 0 AS position, * FROM per_corruption
    UNION ALL
    SELECT 1, 'mean', sum(severities), avg(error), avg(ce), avg(relative_ce)
    FROM per_corruption
    HAVING count(*) > 0
)
ORDER BY position, augmentation;
