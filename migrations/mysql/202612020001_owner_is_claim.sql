-- `owner` now names the holder of a live claim on the row (a pass running it) and is emptied when the pass
-- ends. Values written by earlier versions named the last claimer only; clear them so every row starts
-- unclaimed.
UPDATE braid_txn SET owner = '';
