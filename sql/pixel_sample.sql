-- For $samples images of one run that kept their pixels, picked at random seeded by the run's
-- seed: every variant's stored PNG pixels and last-layer attention map, with its cosine to the
-- original (1 for the original itself). Rows in pick order, original first.
WITH picked AS (
    SELECT v.image_id,
           row_number() OVER (ORDER BY md5(v.image_id || ':' || r.seed::VARCHAR), v.image_id) AS pick
    FROM variants AS v
    JOIN runs AS r USING (run_id)
    WHERE v.run_id = $run_id AND v.variant = 'original' AND v.pixels IS NOT NULL
    QUALIFY pick <= $samples
)
SELECT p.pick, v.image_id, i.path, v.variant, v.pixels, v.attention,
       CASE WHEN v.variant = 'original' THEN 1.0 ELSE s.cosine END AS cosine
FROM picked AS p
JOIN variants AS v ON v.image_id = p.image_id AND v.run_id = $run_id
LEFT JOIN shifts AS s
  ON s.run_id = v.run_id AND s.image_id = v.image_id AND s.variant = v.variant
LEFT JOIN images AS i ON i.image_id = p.image_id
ORDER BY p.pick, v.variant <> 'original', v.variant;
