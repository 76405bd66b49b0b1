-- Does run A's model move less than run B's under each augmentation? Per model metric,
-- augmentation and severity (NULL where it has none), over the images both runs hold: n,
-- both means, the mean and median of the paired differences A - B (positive: A moves less),
-- and the differences themselves (in image_id order) for the Wilcoxon signed-rank test. l2 is left out (its scale is each
-- model's own); the pixel metrics are left out (they do not depend on the model).
WITH paired AS (
    SELECT a.augmentation, a.severity, a.image_id,
           a.cosine AS a_cosine, b.cosine AS b_cosine,
           a.attention_similarity AS a_attention, b.attention_similarity AS b_attention
    FROM shifts AS a
    JOIN shifts AS b USING (image_id, variant)
    WHERE a.run_id = $run_a AND b.run_id = $run_b
),
long AS (
    SELECT 'cosine' AS metric, augmentation, severity, image_id, a_cosine AS a, b_cosine AS b
    FROM paired
    UNION ALL
    SELECT 'attention_similarity', augmentation, severity, image_id, a_attention, b_attention
    FROM paired
)
SELECT metric, augmentation, severity, count(*) AS n,
       avg(a) AS mean_a, avg(b) AS mean_b,
       avg(a - b) AS mean_difference, median(a - b) AS median_difference,
       list(a - b ORDER BY image_id) AS differences
FROM long
GROUP BY metric, augmentation, severity
ORDER BY metric DESC, augmentation, severity;
