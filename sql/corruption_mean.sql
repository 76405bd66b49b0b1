-- How far do a run's levelled perturbations (the corruptions) move its embeddings, in all and
-- relative to a $reference run (NULL for none), in the spirit of ImageNet-C's mCE?
-- One row per augmentation: shift = the mean over its severities of the mean 1 - cosine;
-- reference_shift = the same for the reference run over the same (augmentation, severity)
-- cells; relative = their ratio (sums over the severities both runs hold, as CE sums errors).
-- A last row, augmentation 'mean': shift = the mean over corruptions and severities of
-- 1 - cosine (each cell weighted equally), reference_shift likewise, and relative = the mean of
-- the per-augmentation ratios (as mCE averages the CEs).
WITH cells AS (
    SELECT run_id, augmentation, severity, avg(1 - cosine) AS shift
    FROM shifts
    WHERE (run_id = $run_id OR run_id = $reference) AND severity IS NOT NULL
    GROUP BY ALL
),
paired AS (
    SELECT r.augmentation, r.severity, r.shift, b.shift AS reference_shift
    FROM cells AS r
    LEFT JOIN cells AS b
      ON b.run_id = $reference AND b.augmentation = r.augmentation AND b.severity = r.severity
    WHERE r.run_id = $run_id
),
per_augmentation AS (
    SELECT augmentation,
           count(*) AS severities,
           avg(shift) AS shift,
           avg(reference_shift) AS reference_shift,
           sum(shift) FILTER (WHERE reference_shift IS NOT NULL) / sum(reference_shift)
               AS relative
    FROM paired
    GROUP BY augmentation
)
SELECT augmentation, severities, shift, reference_shift, relative
FROM (
    SELECT 0 AS position, * FROM per_augmentation
    UNION ALL
    SELECT 1, 'mean', (SELECT count(*) FROM paired), (SELECT avg(shift) FROM paired),
           (SELECT avg(reference_shift) FROM paired), avg(relative)
    FROM per_augmentation
    HAVING count(*) > 0
)
ORDER BY position, augmentation;
