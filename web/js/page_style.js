// One <style> element per id in the page's head, added once (every extension of this pack
// styles its own elements this way). A module of helpers: it registers no extension.
export function addStyleOnce(id, css) {
  if (document.getElementById(id)) return;
  const style = document.createElement("style");
  style.id = id;
  style.textContent = css;
  document.head.appendChild(style);
}
