-- check: stdout
-- An updating GROUP BY over JSON rows, printed as a changelog; the check applies the
-- changelog (+I, -U, +U) and compares the final table.
SET 'parallelism.default' = '2';

CREATE TABLE clicks (
  `user` STRING,
  url STRING,
  ms BIGINT
) WITH (
  'connector' = 'filesystem',
  'path' = '${DATA}/clicks.json',
  'format' = 'json'
);

CREATE TABLE per_url (
  url STRING,
  hits BIGINT,
  users BIGINT,
  total_ms BIGINT,
  fastest BIGINT,
  slowest BIGINT,
  avg_ms DOUBLE,
  timed BIGINT
) WITH ('connector' = 'print');

INSERT INTO per_url
SELECT url, COUNT(*), COUNT(DISTINCT `user`), SUM(ms), MIN(ms), MAX(ms), AVG(ms), COUNT(ms)
FROM clicks
GROUP BY url;
