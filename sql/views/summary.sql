-- summary: per run, augmentation and severity (NULL where it has no levels), n and the mean, population std, median, p5 and p95 of
-- every metric; overall = plain mean of the five mean scores; rank 1 = highest overall.
CREATE OR REPLACE VIEW summary AS
WITH aggregated AS (
    SELECT
        run_id,
        any_value(model) AS model,
        augmentation,
        severity,
        count(*) AS n,
        avg(cosine) AS cosine_mean,
        stddev_pop(cosine) AS cosine_std,
        median(cosine) AS cosine_median,
        quantile_cont(cosine, 0.05) AS cosine_p5,
        quantile_cont(cosine, 0.95) AS cosine_p95,
        avg(l2) AS l2_mean,
        stddev_pop(l2) AS l2_std,
        median(l2) AS l2_median,
        quantile_cont(l2, 0.05) AS l2_p5,
        quantile_cont(l2, 0.95) AS l2_p95,
        avg(attention_similarity) AS attention_similarity_mean,
        stddev_pop(attention_similarity) AS attention_similarity_std,
        median(attention_similarity) AS attention_similarity_median,
        quantile_cont(attention_similarity, 0.05) AS attention_similarity_p5,
        quantile_cont(attention_similarity, 0.95) AS attention_similarity_p95,
        avg(patch_similarity) AS patch_similarity_mean,
        stddev_pop(patch_similarity) AS patch_similarity_std,
        median(patch_similarity) AS patch_similarity_median,
        quantile_cont(patch_similarity, 0.05) AS patch_similarity_p5,
        quantile_cont(patch_similarity, 0.95) AS patch_similarity_p95,
        avg(edge_preservation) AS edge_preservation_mean,
        stddev_pop(edge_preservation) AS edge_preservation_std,
        median(edge_preservation) AS edge_preservation_median,
        quantile_cont(edge_preservation, 0.05) AS edge_preservation_p5,
        quantile_cont(edge_preservation, 0.95) AS edge_preservation_p95,
        -- NULL where an original has no textured patch: averaged over the images that have one
        avg(detail_preservation) AS detail_preservation_mean,
        stddev_pop(detail_preservation) AS detail_preservation_std,
        median(detail_preservation) AS detail_preservation_median,
        quantile_cont(detail_preservation, 0.05) AS detail_preservation_p5,
        quantile_cont(detail_preservation, 0.95) AS detail_preservation_p95
    FROM shifts
    GROUP BY run_id, augmentation, severity
),
scored AS (
    SELECT *,
        (cosine_mean + attention_similarity_mean + patch_similarity_mean
         + edge_preservation_mean + detail_preservation_mean) / 5 AS overall
    FROM aggregated
)
SELECT *, rank() OVER (PARTITION BY run_id ORDER BY overall DESC) AS rank
FROM scored;
