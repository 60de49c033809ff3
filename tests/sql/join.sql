-- check: files out
-- A regular inner join of orders with customers on the customer's name, with a further
-- non-equality condition; rows without a partner (erin, frank) give nothing.
SET 'parallelism.default' = '2';

CREATE TABLE orders (id BIGINT, customer STRING, product STRING, quantity INT, price DOUBLE)
  WITH ('connector' = 'filesystem', 'path' = '${DATA}/orders.csv', 'format' = 'csv');
CREATE TABLE customers (name STRING, city STRING, tier STRING)
  WITH ('connector' = 'filesystem', 'path' = '${DATA}/customers.csv', 'format' = 'csv');
CREATE TABLE enriched (id BIGINT, customer STRING, city STRING, product STRING)
  WITH ('connector' = 'filesystem', 'path' = '${DIR}/out', 'format' = 'csv');

INSERT INTO enriched
SELECT o.id, o.customer, c.city, o.product
FROM orders AS o JOIN customers AS c ON o.customer = c.name AND c.tier <> 'bronze'
WHERE o.quantity IS NOT NULL;
