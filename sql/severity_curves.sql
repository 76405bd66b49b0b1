-- How does each levelled perturbation's shift grow with its severity? Per (augmentation,
-- severity): n, and every metric's mean with the half-width of its 95% confidence interval
-- (1.96 standard errors, sample std; NULL for a single image). Perturbations without levels
-- are left out.
SELECT
    augmentation,
    severity,
    count(*) AS n,
    avg(cosine) AS cosine_mean,
    1.96 * stddev_samp(cosine) / sqrt(count(*)) AS cosine_ci95,
    avg(l2) AS l2_mean,
    1.96 * stddev_samp(l2) / sqrt(count(*)) AS l2_ci95,
    avg(attention_similarity) AS attention_similarity_mean,
    1.96 * stddev_samp(attention_similarity) / sqrt(count(*)) AS attention_similarity_ci95,
    avg(patch_similarity) AS patch_similarity_mean,
    1.96 * stddev_samp(patch_similarity) / sqrt(count(*)) AS patch_similarity_ci95,
    avg(edge_preservation) AS edge_preservation_mean,
    1.96 * stddev_samp(edge_preservation) / sqrt(count(*)) AS edge_preservation_ci95,
    avg(detail_preservation) AS detail_preservation_mean,
    1.96 * stddev_samp(detail_preservation) / sqrt(count(*)) AS detail_preservation_ci95
FROM shifts
WHERE run_id = $run_id AND severity IS NOT NULL
GROUP BY augmentation, severity
ORDER BY augmentation, severity;
