"""``scorestream board``: the lead board for sales people (a web page).

Built only on what the worker publishes and serves: ``contacts.scores`` (compacted:
the latest scores of every contact) feeds a small index of the hottest contacts per
model (:mod:`scorestream.board.index`); ``leads.sales_ready`` feeds the live list of
crossings; a contact's page asks a worker's ``GET /contacts/{id}`` for the rules behind
the points and the attributes (:mod:`scorestream.board.server`). The pages are plain
HTML, CSS and JavaScript files shipped with the package (``static/``): nothing to build.
"""
