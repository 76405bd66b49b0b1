-- How do several models' runs compare on each augmentation? The summary of the runs in
-- $run_ids in long format: one row per (run, augmentation, severity) with the run's model
-- and family, and model_rank: the run's place among these runs on that augmentation and
-- severity by mean cosine (1 = its embedding moves least).
SELECT s.run_id, s.model, r.family,
       rank() OVER (PARTITION BY s.augmentation, s.severity ORDER BY s.cosine_mean DESC)
           AS model_rank,
       s.* EXCLUDE (run_id, model)
FROM summary AS s
JOIN runs AS r USING (run_id)
WHERE list_contains($run_ids, s.run_id)
ORDER BY s.augmentation, s.severity, model_rank, s.run_id;
