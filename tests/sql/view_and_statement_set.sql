-- check: files fruit_counts,customers
-- A view read by two INSERTs that run as one job (a statement set).
CREATE TABLE orders (
  id BIGINT,
  customer STRING,
  product STRING,
  quantity INT,
  price DOUBLE
) WITH ('connector' = 'filesystem', 'path' = '${DATA}/orders.csv', 'format' = 'csv');

CREATE VIEW cheap AS SELECT customer, product, quantity FROM orders WHERE price < 5;

CREATE TABLE fruit_out (product STRING, quantity INT) WITH ('connector' = 'filesystem', 'path' = '${DIR}/fruit_counts', 'format' = 'json');
CREATE TABLE customers (customer STRING) WITH ('connector' = 'filesystem', 'path' = '${DIR}/customers', 'format' = 'csv');

EXECUTE STATEMENT SET
BEGIN
  INSERT INTO fruit_out SELECT product, quantity FROM cheap WHERE quantity IS NOT NULL;
  INSERT INTO customers SELECT DISTINCT_NAME FROM (SELECT LOWER(customer) AS DISTINCT_NAME FROM cheap);
END;
