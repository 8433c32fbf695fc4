// Following a server job's event stream (/api/jobs/{id}/events). A non-panel helper: any panel may
// import it (panels never import each other).
import { api } from "./api.js";

// Calls onEvent with every progress snapshot ({type: "progress", fraction, done, total, ...}), then
// exactly once with the final one ({type: "done", result} or {type: "error", error}; an interrupted
// job ends as an error). If the stream breaks, the job's final state is asked for once instead.
// Returns {close()}, for a panel that drops the job (another model was opened).
export function followJob(id, onEvent) {
  const source = new EventSource(`/api/jobs/${id}/events`);
  let ended = false;
  const end = (ev) => {
    if (ended) return;
    ended = true;
    source.close();
    onEvent({ ...ev, type: ev.type === "done" || ev.state === "done" ? "done" : "error" });
  };
  source.addEventListener("progress", (m) => { if (!ended) onEvent(JSON.parse(m.data)); });
  source.addEventListener("done", (m) => end(JSON.parse(m.data)));
  source.addEventListener("error", (m) => {
    if (m.data) { end(JSON.parse(m.data)); return; } // the job's own error event
    if (ended) return;
    source.close(); // the stream broke: ask once for the job's final state
    api(`/api/jobs/${id}`).then((j) => { if (j.state !== "running") end({ type: j.state, ...j }); }).catch(() => {});
  });
  return { close() { ended = true; source.close(); } };
}
