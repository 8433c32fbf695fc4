// Plotly loads asynchronously (it is 3.6 MB of script and the canvas never needs it, so the page
// does not wait for it); every plot call waits for it instead.

const script = document.getElementById("plotly-js");

export const plotlyReady = window.Plotly
  ? Promise.resolve(window.Plotly)
  : new Promise((resolve, reject) => {
    script.addEventListener("load", () => resolve(window.Plotly), { once: true });
    script.addEventListener("error", () => reject(new Error("plotly.min.js could not be loaded from this server")), { once: true });
  });

export async function react(el, data, layout, config) {
  const Plotly = await plotlyReady;
  return Plotly.react(el, data, layout, config);
}
