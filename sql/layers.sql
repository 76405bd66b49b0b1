-- How much does each augmentation shift the CLS attention at every layer, not only the last?
-- Mean attention_similarity per (augmentation, severity, layer); layer 0 is the first block.
SELECT augmentation, severity, layer, avg(attention_similarity) AS attention_similarity,
       count(*) AS n
FROM layer_shifts
WHERE run_id = $run_id
GROUP BY augmentation, severity, layer
ORDER BY augmentation, severity, layer;
