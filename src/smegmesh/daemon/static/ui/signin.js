/* After a login: keep the session's key in this origin's storage, then open the
 * dashboard. The key is in this one answer (to a request that held the API
 * token or smegctl ui's one-time link), never in a page the cookie alone gets:
 * a browser sends the cookie to every port of the host, while storage belongs
 * to one origin (scheme, host and port). */
"use strict";
try {
  localStorage.setItem("smeg-session", document.querySelector('meta[name="smeg-session"]').content);
} catch (e) {
  /* storage disabled: the dashboard will ask to sign in again */
}
window.location.replace("./");
