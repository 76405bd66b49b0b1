-- How much does each augmentation shift the CLS attention at every layer, not only the last?
-- Mean attention_similarity per (augmentation, layer); layer 0 is the first block.
SELECT augmentation, layer, avg(attention_similarity) AS attention_similarity, count(*) AS n
FROM layer_shifts
WHERE run_id = $run_id
GROUP BY augmentation, layer
ORDER BY augmentation, layer;
