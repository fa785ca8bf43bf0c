"""GET /: one HTML page with no external assets (it works offline): drop or pick images, see each one with
its top-k bars. It talks to POST /predict with multipart ``file`` fields, one request per image."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgcls serve</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}
#drop{border:2px dashed #888;border-radius:8px;padding:2em;text-align:center;cursor:pointer}
#drop.over{background:#eef}
.card{display:flex;gap:1em;align-items:flex-start;margin:1em 0;padding:.5em;border-bottom:1px solid #ddd}
.card img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#f4f4f4}
.bars{flex:1}.row{display:flex;align-items:center;gap:.5em;margin:.15em 0}
.name{width:10em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar{height:1em;background:#4a7;border-radius:2px}.err{color:#b00}
.top{font-weight:bold}
</style></head><body>
<h1>imgcls serve</h1><p id="meta">loading model details...</p>
<div id="drop">Drop images here, or click to pick them<input id="pick" type="file" accept="image/*" multiple hidden></div>
<div id="out"></div>
<script>
const out = document.getElementById('out'), drop = document.getElementById('drop'), pick = document.getElementById('pick');
fetch('metadata').then(r => r.json()).then(m => {
  document.getElementById('meta').textContent = m.task + ' model, ' + m.classes.length + ' classes, ' +
    m.image_size + ' px, ' + m.models.map(x => x.run).join(' + ');
}).catch(() => {});
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
function bars(p) {
  const box = el('div', 'bars');
  if (p.probs) {
    const top = Object.entries(p.probs).sort((a, b) => b[1] - a[1]).slice(0, (p.top_k || []).length || 5);
    top.forEach(([c, v], i) => {
      const r = el('div', 'row' + (i === 0 ? ' top' : ''));
      r.append(el('span', 'name', c));
      const b = el('span', 'bar'); b.style.width = Math.max(1, 300 * v) + 'px'; r.append(b);
      r.append(el('span', '', (100 * v).toFixed(1) + '%')); box.append(r);
    });
  }
  Object.entries(p).filter(([k]) => k !== 'probs' && k !== 'top_k').forEach(([k, v]) =>
    box.append(el('div', 'field', k + ': ' + v)));
  return box;
}
async function predict(file) {
  const card = el('div', 'card'), img = el('img'); img.src = URL.createObjectURL(file); img.alt = file.name;
  const right = el('div', 'bars', file.name + ': predicting...'); card.append(img, right); out.prepend(card);
  const form = new FormData(); form.append('file', file, file.name);
  try {
    const r = await fetch('predict?top_k=5', {method: 'POST', body: form}), j = await r.json();
    right.replaceWith(r.ok ? bars(j.predictions[0]) : el('div', 'err', file.name + ': ' + j.error));
  } catch (e) { right.replaceWith(el('div', 'err', file.name + ': ' + e)); }
}
drop.onclick = () => pick.click();
pick.onchange = () => [...pick.files].forEach(predict);
drop.ondragover = e => { e.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = e => { e.preventDefault(); drop.classList.remove('over'); [...e.dataTransfer.files].forEach(predict); };
</script></body></html>
"""
