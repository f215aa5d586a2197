// The web page `stipple serve` answers at `/`: one self-contained HTML file (no CDN, nothing
// fetched but this server's own API). It fills its form from the A1111 routes sd-models (with
// stipple's description of each model) and samplers, submits a job (POST /v1/jobs), follows its
// server-sent events (/v1/jobs/{id}/events) for the bar and the live preview, cancels it with
// DELETE /v1/jobs/{id}, and shows the result from GET /v1/jobs/{id}. With an API key (kept in
// the browser's localStorage) it sends it as a bearer token and polls the job instead of the
// events, which an EventSource cannot authorise.
#include "web_page.h"

namespace stipple::server {

const char* web_page() {
  return R"HTML(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>stipple</title>
<style>
  * { box-sizing: border-box; }
  [hidden] { display: none !important; }
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #f6f6f4; color: #222; }
  header { padding: 12px 20px; background: #222; color: #eee; font-weight: 600; }
  main { display: grid; grid-template-columns: 340px 1fr; gap: 20px; padding: 20px; }
  form { display: grid; gap: 8px; align-content: start; }
  label { display: grid; gap: 2px; font-size: 13px; color: #555; }
  input, select, textarea, button { font: inherit; padding: 6px; width: 100%; min-width: 0; }
  textarea { min-height: 60px; }
  .row { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
  button { cursor: pointer; border: 0; border-radius: 4px; background: #2a6df4; color: #fff; }
  button#cancel { background: #b33; }
  button:disabled { opacity: .5; cursor: default; }
  #bar { height: 10px; background: #ddd; border-radius: 5px; overflow: hidden; }
  #bar div { height: 100%; width: 0; background: #2a6df4; transition: width .2s; }
  #status { font-size: 13px; color: #555; min-height: 1.4em; }
  #error { color: #b33; white-space: pre-wrap; }
  #gallery { display: flex; flex-wrap: wrap; gap: 14px; align-content: start; }
  figure { margin: 0; background: #fff; padding: 8px; border-radius: 6px; max-width: 280px; }
  figure img { width: 256px; image-rendering: pixelated; display: block; }
  figcaption { font-size: 12px; white-space: pre-wrap; color: #444; margin-top: 6px; }
  #preview { width: 256px; image-rendering: pixelated; display: block; background: #eee; }
</style>
</head>
<body>
<header>stipple</header>
<main>
<form id="form">
  <label>model <select id="model"></select></label>
  <label id="prompt-label">prompt <textarea id="prompt">red apple</textarea></label>
  <label id="class-label" hidden>class <select id="class"></select></label>
  <label id="negative-label">negative prompt <input id="negative"></label>
  <label>sampler <select id="sampler"></select></label>
  <div class="row">
    <label>steps <input id="steps" type="number" min="1" max="150"></label>
    <label>CFG scale <input id="cfg" type="number" step="0.5" min="0" max="30"></label>
  </div>
  <div class="row">
    <label>width <input id="width" type="number" step="8" min="8"></label>
    <label>height <input id="height" type="number" step="8" min="8"></label>
  </div>
  <div class="row">
    <label>seed (-1: random) <input id="seed" type="number" value="-1"></label>
    <label>images <input id="count" type="number" value="1" min="1" max="16"></label>
  </div>
  <div class="row">
    <button id="generate" type="submit">Generate</button>
    <button id="cancel" type="button" disabled>Cancel</button>
  </div>
  <div id="bar"><div></div></div>
  <div id="status"></div>
  <img id="preview" alt="live preview" hidden>
  <div id="error"></div>
  <label>API key (servers started with --api-key) <input id="key" type="password" autocomplete="off"></label>
</form>
<section id="gallery"></section>
</main>
<script>
const $ = (id) => document.getElementById(id);
let models = [];

// The API key, kept in this browser; sent as a bearer token when set.
$('key').value = localStorage.getItem('stipple-key') || '';
$('key').addEventListener('change', () => {
  localStorage.setItem('stipple-key', $('key').value);
  if (!models.length) load().then(() => { $('error').textContent = ''; })
      .catch((e) => { $('error').textContent = e.message; });
});

async function api(path, body, method) {
  const headers = {};
  if ($('key').value) headers['Authorization'] = 'Bearer ' + $('key').value;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {method: method || (body === undefined ? 'GET' : 'POST'), headers,
                                 body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await res.json();
  if (!res.ok) throw new Error(data.detail || (data.error && data.error.message) || res.status);
  return data;
}

function showModel() {
  const m = models.find((x) => x.model_name === $('model').value);
  if (!m) return;
  const d = m.stipple;
  // A model not loaded yet has no description: a prompt box and the server's defaults.
  const classes = (d.tasks || []).includes('class2img');
  $('prompt-label').hidden = classes;
  $('negative-label').hidden = classes;
  $('class-label').hidden = !classes;
  $('class').innerHTML = '';
  (d.class_names || []).forEach((name, i) => {
    const o = document.createElement('option');
    o.value = name || String(i);
    o.textContent = name ? i + ': ' + name : String(i);
    $('class').appendChild(o);
  });
  $('steps').value = d.default_steps || '';
  $('cfg').value = d.default_cfg_scale || '';
  $('width').value = d.default_width || '';
  $('height').value = d.default_height || '';
  $('width').disabled = $('height').disabled = !d.size_multiple;
  for (const o of $('sampler').options) o.selected = o.dataset.name === d.default_sampler;
}

async function load() {
  models = await api('/sdapi/v1/sd-models');
  $('model').innerHTML = '';
  $('sampler').innerHTML = '';
  for (const m of models) {
    const o = document.createElement('option');
    o.value = o.textContent = m.model_name;
    $('model').appendChild(o);
  }
  for (const s of await api('/sdapi/v1/samplers')) {
    const o = document.createElement('option');
    o.value = o.textContent = s.name;
    o.dataset.name = s.aliases[0];
    $('sampler').appendChild(o);
  }
  const options = await api('/sdapi/v1/options');
  $('model').value = options.sd_model_checkpoint;
  showModel();
}

let job = null;     // the running job's id
let events = null;  // its EventSource

function addImage(image) {
  const fig = document.createElement('figure');
  const img = document.createElement('img');
  img.src = 'data:image/png;base64,' + image.b64_json;
  img.alt = image.prompt;
  const a = document.createElement('a');
  a.href = img.src;
  a.download = 'stipple-' + image.seed + '.png';
  a.appendChild(img);
  const cap = document.createElement('figcaption');
  cap.textContent = image.parameters;
  fig.append(a, cap);
  $('gallery').prepend(fig);
}

function showProgress(e) {
  $('bar').firstElementChild.style.width = Math.round(e.progress * 100) + '%';
  if (e.state === 'queued')
    $('status').textContent = 'waiting (' + e.queue_position + ' in the queue)';
  else if (e.state === 'running' && e.total > 0)
    $('status').textContent = 'step ' + e.step + ' of ' + e.total +
        (e.eta_seconds ? ', about ' + e.eta_seconds.toFixed(1) + ' s left' : '');
  if (e.preview) {
    $('preview').src = 'data:image/png;base64,' + e.preview;
    $('preview').hidden = false;
  }
}

async function finished(id) {
  events.close();
  events = null;
  job = null;
  $('generate').disabled = false;
  $('cancel').disabled = true;
  $('preview').hidden = true;
  try {
    const r = await api('/v1/jobs/' + id);
    if (r.state === 'failed') throw new Error(r.error.message);
    const images = r.result ? r.result.images : [];
    images.slice().reverse().forEach(addImage);  // the first image ends up first
    $('status').textContent = r.state === 'cancelled' ? 'cancelled' :
        'done: ' + images.length + ' image' + (images.length === 1 ? '' : 's');
    if (r.notes.length) $('error').textContent = 'note: ' + r.notes.join('; ');
    $('bar').firstElementChild.style.width = r.state === 'succeeded' ? '100%' : '0';
  } catch (e) {
    $('error').textContent = e.message;
    $('status').textContent = '';
  }
}

async function generate(event) {
  event.preventDefault();
  const m = models.find((x) => x.model_name === $('model').value);
  const classes = (m.stipple.tasks || []).includes('class2img');
  const body = {
    model: m.model_name,
    prompt: classes ? $('class').value : $('prompt').value,
    negative_prompt: classes ? '' : $('negative').value,
    sampler_name: $('sampler').value,
    seed: Number($('seed').value), batch_size: Number($('count').value),
  };
  if ($('steps').value) body.steps = Number($('steps').value);
  if ($('cfg').value) body.cfg_scale = Number($('cfg').value);
  if (!$('width').disabled) { body.width = Number($('width').value); body.height = Number($('height').value); }
  $('error').textContent = '';
  $('status').textContent = 'submitting';
  $('bar').firstElementChild.style.width = '0';
  try {
    const r = await api('/v1/jobs', body);
    job = r.id;
  } catch (e) {
    $('error').textContent = e.message;
    $('status').textContent = '';
    return;
  }
  $('generate').disabled = true;
  $('cancel').disabled = false;
  const id = job;
  if (!$('key').value) {
    events = new EventSource('/v1/jobs/' + id + '/events');
    events.addEventListener('progress', (m) => showProgress(JSON.parse(m.data)));
    events.addEventListener('done', () => finished(id));
    events.onerror = () => { if (events) finished(id); };
    return;
  }
  // An EventSource cannot send the key: poll the job instead.
  const timer = setInterval(async () => {
    try {
      const e = await api('/v1/jobs/' + id + '?images=false&preview=true');
      if (e.state === 'queued' || e.state === 'running') return showProgress(e);
    } catch (e) { /* finished() reports */ }
    clearInterval(timer);
    finished(id);
  }, 250);
  events = {close: () => clearInterval(timer)};
}

$('model').addEventListener('change', showModel);
$('form').addEventListener('submit', generate);
$('cancel').addEventListener('click', () => {
  if (job) api('/v1/jobs/' + job, undefined, 'DELETE').catch(() => {});
});
load().catch((e) => { $('error').textContent = e.message; });
</script>
</body>
</html>
)HTML";
}

}  // namespace stipple::server
