-- What is the per-(augmentation, severity) summary of one run: n, and the mean, std, median, p5 and p95
-- of every metric, with the overall score and rank? Sorted by rank (1 = least shift).
SELECT * EXCLUDE (run_id, model)
FROM summary
WHERE run_id = $run_id
ORDER BY rank, augmentation, severity;
