-- Where inside the model does each augmentation's shift appear, and how fast does it grow?
-- Per (augmentation, severity, layer) of one run: the mean cosine of the pooled token with its
-- original's and its 95% interval (view layer_drift), drift = 1 - mean cosine, and the onset
-- layer: the first layer whose drift reaches half the drift at the last layer (the pooling
-- head, SigLIP's extra entry, is not a layer here); NULL where the last layer does not move.
SELECT augmentation, severity, layer, is_head, depth, n, cosine_mean, cosine_std, cosine_ci95,
       drift,
       CASE WHEN last_drift > 0 THEN
           min(CASE WHEN NOT is_head AND drift >= last_drift / 2 THEN layer END)
               OVER (PARTITION BY augmentation, severity)
       END AS onset_layer
FROM (
    SELECT *, 1 - cosine_mean AS drift,
           first_value(1 - cosine_mean) OVER (
               PARTITION BY augmentation, severity ORDER BY is_head, layer DESC
           ) AS last_drift
    FROM layer_drift
    WHERE run_id = $run_id
)
ORDER BY augmentation, severity NULLS FIRST, layer;
