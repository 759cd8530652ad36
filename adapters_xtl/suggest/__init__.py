"""`xtl suggest`: rank intermediate tasks for a target task and language before training any
(issue 17). Each signal is one module of this package; the ranking combines them."""
