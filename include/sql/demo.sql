-- Rows of the run's window [data_interval_start, data_interval_end).
-- End with a total ORDER BY: the same rows in the same order give byte-identical CSV.
SELECT id, customer, city, note, amount, score, created_at
FROM demo_raw.events
WHERE created_at >= '{{ data_interval_start }}'
  AND created_at <  '{{ data_interval_end }}'
ORDER BY id
