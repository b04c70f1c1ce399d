-- The talks and their ratings. Only migrations change the schema (T06):
-- functions run declared statements, never DDL.
CREATE TABLE talks (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    speaker TEXT NOT NULL
);

CREATE TABLE ratings (
    talk_id INTEGER NOT NULL REFERENCES talks (id),
    subject TEXT NOT NULL,
    rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 5),
    rated_at INTEGER NOT NULL,
    PRIMARY KEY (talk_id, subject)
);

CREATE INDEX ratings_by_subject ON ratings (subject);

INSERT INTO talks (id, title, speaker) VALUES
    (1, 'Denial of Wallet: when the bill is the attack', 'A. Lovelace'),
    (2, 'Least privilege for functions, one grant at a time', 'G. Hopper'),
    (3, 'Injection is still number one', 'K. Johnson'),
    (4, 'Forgetting on purpose: personal data with a deadline', 'M. Hamilton');
