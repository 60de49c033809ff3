-- check: files tumble,hop,cumulate
-- Flink's window table-valued functions over the bids of Flink's documentation; the expected
-- rows are the ones its documentation shows.
CREATE TABLE bids (
  bidtime TIMESTAMP(3),
  price DOUBLE,
  item STRING,
  WATERMARK FOR bidtime AS bidtime - INTERVAL '1' SECOND
) WITH ('connector' = 'filesystem', 'path' = '${DATA}/bids.csv', 'format' = 'csv', 'scan.parallelism' = '1');

CREATE TABLE tumble_out (window_start STRING, window_end STRING, total DOUBLE, bids BIGINT)
  WITH ('connector' = 'filesystem', 'path' = '${DIR}/tumble', 'format' = 'csv');
CREATE TABLE hop_out (window_start STRING, window_end STRING, total DOUBLE)
  WITH ('connector' = 'filesystem', 'path' = '${DIR}/hop', 'format' = 'csv');
CREATE TABLE cumulate_out (window_start STRING, window_end STRING, total DOUBLE)
  WITH ('connector' = 'filesystem', 'path' = '${DIR}/cumulate', 'format' = 'csv');

EXECUTE STATEMENT SET
BEGIN
  INSERT INTO tumble_out
  SELECT CAST(window_start AS STRING), CAST(window_end AS STRING), SUM(price), COUNT(*)
  FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(bidtime), INTERVAL '10' MINUTES))
  GROUP BY window_start, window_end;

  INSERT INTO hop_out
  SELECT CAST(window_start AS STRING), CAST(window_end AS STRING), SUM(price)
  FROM TABLE(HOP(TABLE bids, DESCRIPTOR(bidtime), INTERVAL '5' MINUTES, INTERVAL '10' MINUTES))
  GROUP BY window_start, window_end;

  INSERT INTO cumulate_out
  SELECT CAST(window_start AS STRING), CAST(window_end AS STRING), SUM(price)
  FROM TABLE(CUMULATE(TABLE bids, DESCRIPTOR(bidtime), INTERVAL '2' MINUTES, INTERVAL '10' MINUTES))
  GROUP BY window_start, window_end;
END;
