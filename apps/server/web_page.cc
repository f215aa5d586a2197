// The web page `stipple serve` answers at `/`: one self-contained HTML file (no CDN, nothing
// fetched but this server's own API). It talks to the A1111 routes: sd-models (with stipple's
// description of each model) and samplers to fill the form, txt2img to generate, progress to
// drive the bar while a generation runs, interrupt to cancel.
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
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #f6f6f4; color: #222; }
  header { padding: 12px 20px; background: #222; color: #eee; font-weight: 600; }
  main { display: grid; grid-template-columns: 340px 1fr; gap: 20px; padding: 20px; }
  form { display: grid; gap: 8px; align-content: start; }
  label { display: grid; gap: 2px; font-size: 13px; color: #555; }
  input, select, textarea, button { font: inherit; padding: 6px; }
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
  <div id="error"></div>
</form>
<section id="gallery"></section>
</main>
<script>
const $ = (id) => document.getElementById(id);
let models = [];

async function api(path, body) {
  const res = await fetch(path, body === undefined ? {} : {
    method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
  const data = await res.json();
  if (!res.ok) throw new Error(data.detail || (data.error && data.error.message) || res.status);
  return data;
}

function showModel() {
  const m = models.find((x) => x.model_name === $('model').value);
  if (!m) return;
  const d = m.stipple;
  const classes = d.tasks.includes('class2img');
  $('prompt-label').hidden = classes;
  $('negative-label').hidden = classes;
  $('class-label').hidden = !classes;
  $('class').innerHTML = '';
  d.class_names.forEach((name, i) => {
    const o = document.createElement('option');
    o.value = name || String(i);
    o.textContent = name ? i + ': ' + name : String(i);
    $('class').appendChild(o);
  });
  $('steps').value = d.default_steps;
  $('cfg').value = d.default_cfg_scale;
  $('width').value = d.default_width;
  $('height').value = d.default_height;
  $('width').disabled = $('height').disabled = d.size_multiple === 0;
  for (const o of $('sampler').options) o.selected = o.dataset.name === d.default_sampler;
}

async function load() {
  models = await api('/sdapi/v1/sd-models');
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

let polling = null;
async function poll() {
  try {
    const p = await api('/sdapi/v1/progress');
    $('bar').firstElementChild.style.width = Math.round(p.progress * 100) + '%';
    if (p.state.sampling_steps > 0)
      $('status').textContent = 'step ' + p.state.sampling_step + ' of ' + p.state.sampling_steps +
          (p.eta_relative > 0 ? ', about ' + p.eta_relative.toFixed(1) + ' s left' : '');
  } catch (e) { /* the next poll will tell */ }
}

async function generate(event) {
  event.preventDefault();
  const m = models.find((x) => x.model_name === $('model').value);
  const classes = m.stipple.tasks.includes('class2img');
  const body = {
    prompt: classes ? $('class').value : $('prompt').value,
    negative_prompt: classes ? '' : $('negative').value,
    sampler_name: $('sampler').value,
    steps: Number($('steps').value), cfg_scale: Number($('cfg').value),
    seed: Number($('seed').value), batch_size: Number($('count').value),
    override_settings: {sd_model_checkpoint: m.model_name},
  };
  if (!$('width').disabled) { body.width = Number($('width').value); body.height = Number($('height').value); }
  $('error').textContent = '';
  $('generate').disabled = true;
  $('cancel').disabled = false;
  $('status').textContent = 'waiting';
  $('bar').firstElementChild.style.width = '0';
  polling = setInterval(poll, 250);
  try {
    const r = await api('/sdapi/v1/txt2img', body);
    const info = JSON.parse(r.info);
    r.images.forEach((b64, i) => {
      const fig = document.createElement('figure');
      const img = document.createElement('img');
      img.src = 'data:image/png;base64,' + b64;
      img.alt = info.all_prompts[i];
      const a = document.createElement('a');
      a.href = img.src;
      a.download = 'stipple-' + info.all_seeds[i] + '.png';
      a.appendChild(img);
      const cap = document.createElement('figcaption');
      cap.textContent = info.infotexts[i];
      fig.append(a, cap);
      $('gallery').prepend(fig);
    });
    $('status').textContent = info.interrupted ? 'cancelled' :
        'done: ' + r.images.length + ' image' + (r.images.length === 1 ? '' : 's');
    if (info.not_honoured.length) $('error').textContent = 'note: ' + info.not_honoured.join('; ');
    $('bar').firstElementChild.style.width = info.interrupted ? '0' : '100%';
  } catch (e) {
    $('error').textContent = e.message;
    $('status').textContent = '';
  } finally {
    clearInterval(polling);
    $('generate').disabled = false;
    $('cancel').disabled = true;
  }
}

$('model').addEventListener('change', showModel);
$('form').addEventListener('submit', generate);
$('cancel').addEventListener('click', () => api('/sdapi/v1/interrupt', {}));
load().catch((e) => { $('error').textContent = e.message; });
</script>
</body>
</html>
)HTML";
}

}  // namespace stipple::server
