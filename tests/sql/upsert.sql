-- check: stdout upsert 1
-- A sink whose PRIMARY KEY is the query's GROUP BY key gets upserts, as in Flink: +I and +U
-- rows replace the key's row, and no -U precedes them. The check applies them by key and
-- fails on any -U.
SET 'parallelism.default' = '2';

CREATE TABLE clicks (`user` STRING, url STRING, ms BIGINT)
  WITH ('connector' = 'filesystem', 'path' = '${DATA}/clicks.json', 'format' = 'json');

CREATE TABLE per_url (
  url STRING,
  hits BIGINT,
  slowest BIGINT,
  PRIMARY KEY (url) NOT ENFORCED
) WITH ('connector' = 'print');

INSERT INTO per_url
SELECT url, COUNT(*), MAX(ms) FROM clicks GROUP BY url;
