-- What is the cosine to the original of every augmentation of $samples images picked at random,
-- seeded by the run's seed (the same images on every report of the run)? Rows in pick order.
WITH picked AS (
    SELECT v.image_id,
           row_number() OVER (ORDER BY md5(v.image_id || ':' || r.seed::VARCHAR), v.image_id) AS pick
    FROM variants AS v
    JOIN runs AS r USING (run_id)
    WHERE v.run_id = $run_id AND v.variant = 'original'
    QUALIFY pick <= $samples
)
SELECT p.pick, s.image_id, i.path, s.augmentation, s.severity, s.cosine
FROM picked AS p
JOIN shifts AS s ON s.image_id = p.image_id AND s.run_id = $run_id
LEFT JOIN images AS i ON i.image_id = p.image_id
ORDER BY p.pick, s.augmentation, s.severity;
