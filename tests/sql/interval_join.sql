-- check: files out
-- An interval join: orders shipped within an hour of being placed. Both sides carry
-- watermarks, so each side's rows leave the join's state once the watermark passes the time
-- bound; the result is that of a regular join filtered by the bound.
SET 'parallelism.default' = '2';

CREATE TABLE placed (
  id BIGINT,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH ('connector' = 'filesystem', 'path' = '${DATA}/placed.csv', 'format' = 'csv', 'scan.parallelism' = '1');
CREATE TABLE shipments (
  order_id BIGINT,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '1' HOUR
) WITH ('connector' = 'filesystem', 'path' = '${DATA}/shipments.csv', 'format' = 'csv', 'scan.parallelism' = '1');
CREATE TABLE out (id BIGINT, placed STRING, shipped STRING)
  WITH ('connector' = 'filesystem', 'path' = '${DIR}/out', 'format' = 'csv');

INSERT INTO out
SELECT p.id, CAST(p.ts AS STRING), CAST(s.ts AS STRING)
FROM placed AS p JOIN shipments AS s
  ON p.id = s.order_id AND p.ts BETWEEN s.ts - INTERVAL '1' HOUR AND s.ts;
