-- Which parts of the image moved, and where was the model looking? Per augmentation (and
-- severity) of one run, over its images: the mean token-drift map (per patch position, the
-- mean 1 - cosine between the variant's and its original's token at the last layer,
-- `token_drift`) and the variants' mean attention map (`attention`, the run's last stored
-- map), each g*g values in row-major order. For flips, rotations, perspective and elastic
-- transforms a position compares the same place in the image frame, not the same content
-- (docs/metrics.md).
SELECT augmentation, severity, max(n) AS n,
       list(drift ORDER BY cell) AS token_drift,
       list(attention ORDER BY cell) AS attention
FROM (
    SELECT augmentation, severity, cell, count(*) AS n, avg(drift) AS drift,
           avg(attention) AS attention
    FROM (
        SELECT perturbation_name(variant, severity) AS augmentation, severity,
               unnest(token_drift)::DOUBLE AS drift,
               unnest(attention)::DOUBLE AS attention,
               unnest(range(len(token_drift))) AS cell
        FROM variants
        WHERE run_id = $run_id AND variant <> 'original' AND token_drift IS NOT NULL
    )
    GROUP BY augmentation, severity, cell
)
GROUP BY augmentation, severity
ORDER BY augmentation, severity NULLS FIRST;
