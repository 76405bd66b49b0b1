-- layer_drift: where inside the model does each augmentation's representation start to move?
-- One row per (run, augmentation, severity, layer): n, the mean, std and 95% interval
-- half-width (1.96 std / sqrt n) of `layer_cosine`, the cosine between the variant's and its
-- original's pooled token at the output of that layer (docs/metrics.md). Layer 0 is the
-- embedding layer's output, layer L the last layer's; SigLIP's entry L + 1 is its pooling
-- head's output (is_head). depth = layer / L, to put models of different depths side by side.
-- Rows stored before migration 0006 hold no layer_cosine and are not here.
CREATE OR REPLACE VIEW layer_drift AS
SELECT run_id, augmentation, severity, layer, layer > blocks AS is_head,
       layer / blocks AS depth, count(*) AS n,
       avg(cosine) AS cosine_mean,
       stddev_samp(cosine) AS cosine_std,
       1.96 * stddev_samp(cosine) / sqrt(count(*)) AS cosine_ci95
FROM (
    -- L from the run (its attention maps, and SigLIP's pooling head's map), not from the
    -- rows' token_drift_layers: reading that column cost 2 s on the paper-size store
    SELECT v.run_id, perturbation_name(v.variant, v.severity) AS augmentation, v.severity,
           r.num_layers - CASE WHEN r.family IN ('siglip', 'siglip2') THEN 1 ELSE 0 END
               AS blocks,
           unnest(v.layer_cosine)::DOUBLE AS cosine,
           unnest(range(len(v.layer_cosine))) AS layer
    FROM variants AS v JOIN runs AS r USING (run_id)
    WHERE v.variant <> 'original' AND v.layer_cosine IS NOT NULL
)
GROUP BY run_id, augmentation, severity, layer, blocks;
