-- How many images does one run hold, and how many of them kept their pixels (--keep-pixels)?
SELECT count(*) AS images, count(pixels) AS with_pixels
FROM variants
WHERE run_id = $run_id AND variant = 'original';
