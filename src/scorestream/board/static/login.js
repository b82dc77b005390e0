"use strict";
// Carries ?next= into the form and says when the last token was wrong.
(function () {
  var params = new URLSearchParams(window.location.search);
  var next = params.get("next");
  if (next) document.getElementById("next").value = next;
  if (params.get("failed")) document.getElementById("failed").hidden = false;
})();
