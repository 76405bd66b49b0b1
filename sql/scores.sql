-- How does each augmentation score on the paper's five scores (embedding cosine, attention,
-- patch, edge, detail), and what is its overall score (their plain mean) and rank?
SELECT
    augmentation,
    severity,
    cosine_mean AS cosine,
    attention_similarity_mean AS attention_similarity,
    patch_similarity_mean AS patch_similarity,
    edge_preservation_mean AS edge_preservation,
    detail_preservation_mean AS detail_preservation,
    overall,
    rank
FROM summary
WHERE run_id = $run_id
ORDER BY rank, augmentation, severity;
