-- Which labels do a run's images carry? The distinct class names (images.label, migration
-- 0007) of the images run $run_id holds, with how many images carry each; unlabelled images
-- are left out.
SELECT i.label, count(*) AS images
FROM images AS i
WHERE i.label IS NOT NULL
  AND i.image_id IN (SELECT image_id FROM variants WHERE run_id = $run_id AND variant = 'original')
GROUP BY i.label
ORDER BY i.label;
