-- Which parts of the image moved? The mean token-drift map of each augmentation (and
-- severity) of one run: per patch position, the mean over images of 1 - cosine between the
-- variant's and its original's token at the last layer (`token_drift`, g*g values in row-major
-- order, as `attention`). For flips, rotations, perspective and elastic transforms a position
-- compares the same place in the image frame, not the same content (docs/metrics.md).
SELECT augmentation, severity, max(n) AS n, list(drift ORDER BY cell) AS token_drift
FROM (
    SELECT augmentation, severity, cell, count(*) AS n, avg(value) AS drift
    FROM (
        SELECT perturbation_name(variant, severity) AS augmentation, severity,
               len(token_drift) AS cells,
               unnest(token_drift)::DOUBLE AS value,
               unnest(range(len(token_drift))) AS cell
        FROM variants
        WHERE run_id = $run_id AND variant <> 'original' AND token_drift IS NOT NULL
    )
    GROUP BY augmentation, severity, cell
)
GROUP BY augmentation, severity
ORDER BY augmentation, severity NULLS FIRST;
