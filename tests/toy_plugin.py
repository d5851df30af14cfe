"The one registry line of the toy method (imported through `$REID_NB_METHODS=toy_plugin`)."
from reid_nb.methods.registry import register
from toy_method import TOY

register(TOY)
