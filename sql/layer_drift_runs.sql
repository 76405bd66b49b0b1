-- Does the shift grow at the same relative depth in every model? Per run of $run_ids (a
-- list), augmentation, severity and layer: the mean cosine of the pooled token with the
-- original's and its 95% interval half-width (view layer_drift), against depth = layer / L,
-- so that models of different depths share one axis. Pooling-head entries are left out.
SELECT d.run_id, r.model, d.augmentation, d.severity, d.layer, d.depth, d.n,
       d.cosine_mean, d.cosine_ci95
FROM layer_drift AS d
JOIN runs AS r USING (run_id)
WHERE d.run_id IN (SELECT unnest($run_ids)) AND NOT d.is_head
ORDER BY d.run_id, d.augmentation, d.severity NULLS FIRST, d.layer;
