// TensorBoard's "Class similarity" tab (lightning_classim): lists the runs under the logdir and shows the chosen
// run's explorer in a frame. Loaded by TensorBoard as an ES module; render() is its entry point.
export async function render() {
  const base = (path) => new URL(path, import.meta.url).toString();
  document.body.style.cssText = "margin:0;height:100vh;display:flex;flex-direction:column;font:13px system-ui,sans-serif";
  const bar = document.createElement("div");
  bar.id = "classim-tb-bar";
  bar.style.cssText = "padding:6px 10px;border-bottom:1px solid #ddd;display:flex;gap:10px;align-items:center";
  const frame = document.createElement("iframe");
  frame.id = "classim-tb-frame";
  frame.style.cssText = "flex:1;border:0;width:100%";
  document.body.append(bar, frame);
  let runs = [];
  try {
    runs = await (await fetch(base("./runs"))).json();
  } catch (err) {
    bar.textContent = "Could not list the runs: " + err;
    return;
  }
  if (!runs.length) {
    bar.textContent = "No run of lightning_classim under this logdir yet (folders with a run.json and an epoch).";
    return;
  }
  const label = document.createElement("label");
  label.textContent = "run ";
  const select = document.createElement("select");
  select.id = "classim-tb-runs";
  for (const run of runs) {
    const option = document.createElement("option");
    option.value = run.run;
    option.textContent = `${run.run}  (${run.num_classes} classes, epochs ${run.epochs[0]}..${run.epochs[run.epochs.length - 1]})`;
    select.append(option);
  }
  label.append(select);
  const note = document.createElement("span");
  note.style.color = "#666";
  note.textContent = `${runs.length} run(s). Hover a cell for the two classes and r; click a row for its nearest classes.`;
  bar.append(label, note);
  const show = () => { frame.src = base("./explorer?run=" + encodeURIComponent(select.value)); };
  select.addEventListener("change", show);
  show();
}
