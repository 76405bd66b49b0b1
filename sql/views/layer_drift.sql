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
    SELECT run_id, perturbation_name(variant, severity) AS augmentation, severity,
           len(token_drift_layers) // len(token_drift) AS blocks,
           unnest(layer_cosine)::DOUBLE AS cosine,
           unnest(range(len(layer_cosine))) AS layer
    FROM variants
    WHERE variant <> 'original' AND layer_cosine IS NOT NULL
)
GROUP BY run_id, augmentation, severity, layer, blocks;
